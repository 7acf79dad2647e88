//! Newtypes for the two positions a partition log talks about, so they cannot be mixed up with
//! each other or with byte counts.

use std::fmt;

/// The position of a record in a partition's log. Offsets are assigned contiguously from the
/// log end offset on append and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub i64);

impl Offset {
    /// The first offset of a fresh log.
    pub const ZERO: Offset = Offset(0);

    /// Returns the raw offset, as carried on the wire.
    pub const fn value(self) -> i64 {
        self.0
    }

    /// Returns the offset right after this one.
    pub const fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The epoch of a partition's leadership. It grows with every leader change and is stamped on
/// every batch the leader appends, which is what lets a follower find where its log diverged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LeaderEpoch(pub i32);

impl LeaderEpoch {
    /// Returns the raw epoch, as carried on the wire.
    pub const fn value(self) -> i32 {
        self.0
    }
}

impl fmt::Display for LeaderEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_order_and_advance() {
        assert!(Offset(1) < Offset(2));
        assert_eq!(Offset(41).next(), Offset(42));
        assert_eq!(Offset(7).value(), 7);
        assert_eq!(Offset(7).to_string(), "7");
        assert_eq!(LeaderEpoch(3).to_string(), "3");
        assert_eq!(LeaderEpoch::default().value(), 0);
    }
}
