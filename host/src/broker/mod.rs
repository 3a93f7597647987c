//! Broker transports (being written).
