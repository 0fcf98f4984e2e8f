//! Fuzz tests of what the Modbus mapper reads from outside: register and coil values from a
//! device, and the Device and DeviceModel objects an operator writes. Each must give a value or
//! an error, never a panic. See `wedge_testkit_fuzz` for how they run.

use wedge_core::device::{Device, DeviceModel};
use wedge_core::twin::{PropertyType, TwinValue};
use wedge_testkit_fuzz::Mutation;

use crate::codec::Codec;
use crate::config::ModbusDevice;

const KINDS: [PropertyType; 6] = [
    PropertyType::Int,
    PropertyType::Float,
    PropertyType::Double,
    PropertyType::String,
    PropertyType::Boolean,
    PropertyType::Bytes,
];

#[test]
fn registers_and_bits_decode_or_are_refused() {
    bolero::check!()
        .with_type::<(u8, u8, i16, bool, bool, Vec<u16>, Vec<bool>)>()
        .for_each(
            |(kind, limit, scale, swap_bytes, swap_registers, registers, bits)| {
                let mut codec =
                    Codec::new(KINDS[usize::from(*kind) % KINDS.len()], u16::from(*limit));
                // Scales as operators write them: 1, 0.1, 10, negative, zero.
                codec.scale = f64::from(*scale) / 16.0;
                codec.swap_bytes = *swap_bytes;
                codec.swap_registers = *swap_registers;
                if let Ok(value) = codec.decode_registers(registers) {
                    let written = codec.encode_registers(&value);
                    // Raw bytes and unscaled integers are written back exactly as they were read.
                    let exact = matches!(value, TwinValue::Bytes(_))
                        || (matches!(value, TwinValue::Integer(_)) && codec.scale == 1.0);
                    if exact {
                        assert_eq!(written.ok().as_ref(), Some(registers));
                    }
                }
                if let Ok(value) = codec.decode_bits(bits) {
                    // Coils hold BOOLEAN and INT properties (the config refuses other types there).
                    if matches!(codec.kind, PropertyType::Boolean | PropertyType::Int) {
                        assert_eq!(codec.encode_bit(&value).ok(), bits.first().copied());
                    }
                }
            },
        );
}

const OBJECTS: &[&str] = &[
    r#"{"metadata":{"name":"thermometer"},"spec":{"protocol":"modbus","properties":[{"name":"temperature","type":"FLOAT","accessMode":"ReadOnly"},{"name":"setpoint","type":"INT","accessMode":"ReadWrite","minimum":"0","maximum":"100"},{"name":"fan","type":"BOOLEAN","accessMode":"ReadWrite"},{"name":"label","type":"STRING","accessMode":"ReadWrite"}]}}"#,
    r#"{"metadata":{"name":"thermo-1"},"spec":{"deviceModelRef":{"name":"thermometer"},"protocol":{"protocolName":"modbus","configData":{"ip":"10.0.0.7","port":"5020","slaveID":3}},"properties":[{"name":"temperature","collectCycle":500000000,"reportCycle":0,"visitors":{"protocolName":"modbus","configData":{"register":"InputRegister","offset":2,"limit":2,"scale":0.5,"isSwap":true,"isRegisterSwap":false}}},{"name":"fan","visitors":{"protocolName":"modbus","configData":{"register":"CoilRegister","offset":0}}},{"name":"label","desired":{"value":"x"},"visitors":{"protocolName":"modbus","configData":{"register":"HoldingRegister","offset":10,"limit":4}}}]}}"#,
];

#[test]
fn devices_and_models_map_or_are_refused() {
    let model: Option<DeviceModel> = serde_json::from_str(OBJECTS[0]).ok();
    let device: Option<Device> = serde_json::from_str(OBJECTS[1]).ok();
    let (Some(model), Some(device)) = (model, device) else {
        panic!("the seed objects are valid");
    };
    if let Err(e) = ModbusDevice::from_kubeedge(&device, &model) {
        panic!("the seed device maps: {e}");
    }
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let text = m.apply_str(OBJECTS);
        if let Ok(device) = serde_json::from_str::<Device>(&text) {
            let _ = ModbusDevice::from_kubeedge(&device, &model);
        }
        if let Ok(model) = serde_json::from_str::<DeviceModel>(&text) {
            let _ = ModbusDevice::from_kubeedge(&device, &model);
        }
    });
}
