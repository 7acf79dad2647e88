//! Whole-cluster test harness.
