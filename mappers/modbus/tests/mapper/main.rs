//! The Modbus mapper's tests through real Modbus servers, one binary: the crate's own simulator
//! and a server nobody here wrote (pymodbus).

mod common;
mod pymodbus;
mod simulator;
