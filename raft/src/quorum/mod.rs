//! Quorum arithmetic: which index a set of voters has committed and who won a vote, for a
//! simple majority ([`MajorityConfig`]) and for joint consensus ([`JointConfig`]).

mod joint;
mod majority;

pub use joint::JointConfig;
pub use majority::MajorityConfig;

/// The outcome of a vote so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Neither won nor lost yet: some votes are missing.
    Pending,
    /// A quorum rejected.
    Lost,
    /// A quorum granted.
    Won,
}
