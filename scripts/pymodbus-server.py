#!/usr/bin/env python3
"""A Modbus TCP server nobody in Wedge wrote, for the Modbus mapper's interoperability test
(mappers/modbus/tests/mapper/pymodbus.rs): pymodbus 3.x on 127.0.0.1:<port>, any unit id, with known
starting values.

  holding registers 0..=4: 215, 0, 0x4148, 0x0000, 0xFFF9  (21.5 at scale 0.1; f32 12.5; -7)
  input registers   0..=1: 42, 0x0100                      (42; 1 with isSwap)
  coils             0..=1: True, False
  discrete inputs   0..=1: False, True

Usage: python3 scripts/pymodbus-server.py PORT
"""

import asyncio
import logging
import sys

import pymodbus
from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartAsyncTcpServer

try:  # pymodbus >= 3.10 renamed the slave context
    from pymodbus.datastore import ModbusDeviceContext as DeviceContext
except ImportError:  # pragma: no cover - older 3.x
    from pymodbus.datastore import ModbusSlaveContext as DeviceContext


def block(values):
    # Block address 1 is protocol address 0 in every 3.x release (zero_mode off / SimData - 1).
    return ModbusSequentialDataBlock(1, list(values))


async def main(port: int) -> None:
    device = DeviceContext(
        di=block([False, True]),
        co=block([True, False]),
        hr=block([215, 0, 0x4148, 0x0000, 0xFFF9]),
        ir=block([42, 0x0100]),
    )
    # One device context answers every unit id.
    context = ModbusServerContext(device, single=True)
    print(f"pymodbus {pymodbus.__version__} serving 127.0.0.1:{port}", file=sys.stderr, flush=True)
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: pymodbus-server.py PORT")
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(int(sys.argv[1])))
