//! One module per `segwatch` subcommand: argument parsing at the edge, then a
//! call into the pure core.

pub mod crd;
pub mod audit;
pub mod netpol;
pub mod run;
pub mod suggest;
