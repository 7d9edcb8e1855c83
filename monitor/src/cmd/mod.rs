//! One module per `segwatch` subcommand: argument parsing at the edge, then a
//! call into the pure core.

pub mod audit;
pub mod crd;
pub mod netpol;
pub mod probe;
pub mod run;
pub mod staged;
pub mod suggest;
