//! `cloudcore`: the cloud side.

fn main() {}
