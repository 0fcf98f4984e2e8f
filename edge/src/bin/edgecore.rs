//! `edgecore`: the edge agent.

fn main() {}
