//! A KubeEdge-style Modbus TCP mapper: it serves the `devices.kubeedge.io/v1beta1` Devices whose
//! protocol is `modbus`, reading their properties from Modbus registers and writing desired values
//! back.
//!
//! Start reading at [`config`] (how a Device and its DeviceModel become a [`ModbusDevice`]), then
//! [`codec`] (how registers become twin values and back) and [`mapper`] (the loop that connects,
//! polls, reports and writes). [`sim`] is a thermometer-and-fan Modbus server for demos and tests.

pub mod codec;
pub mod config;
#[cfg(test)]
mod fuzz;
pub mod mapper;
pub mod sim;

pub use codec::{Codec, CodecError};
pub use config::{ConfigError, ModbusDevice, ModbusProperty, RegisterKind};
pub use mapper::{Desired, TwinPort, run};
pub use sim::{SimConfig, Simulator};
