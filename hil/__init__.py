"""Hardware in the loop: ESP32-S3 boards on serial ports, and virtual boards that behave like them.

console (sans-I/O parser + formatter of firmware/CONSOLE.md), vfirmware (the firmware's console in
Python), esp32sim (esp32sim:// pyserial port with the auto-reset circuit), virtual_board (pty boards),
serial_link, board (SerialBoard), flash, rig (hardware map, discovery, port locks), calibrate,
scenario_boards, plugin (pytest), cli (`propeller hil`).
"""
