//! Result backends (being written).
