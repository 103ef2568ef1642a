//! Fault tests for raftd: a linearizability checker for key-value histories
//! ([`checker`]), and a harness that runs real `raftd` processes and injects faults
//! ([`harness`]).

#![warn(clippy::unwrap_used)]

pub mod checker;
pub mod harness;
pub mod ports;
