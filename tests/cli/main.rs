//! placeholder until the CLI tests land
