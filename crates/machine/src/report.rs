//! Error reports people can read.
