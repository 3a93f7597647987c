//! Result backends against real servers (being written).
