//! Broker transports against real servers (being written).
