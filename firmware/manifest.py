# Freeze the TraceCode badge firmware into a MicroPython build:
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/firmware/manifest.py
# It includes the port's own manifest, aioble (from micropython-lib, which the build
# system knows as a library), and the tcbadge package. boot.py/main.py stay on the file
# system so a badge can be reconfigured without reflashing.
metadata(description="TraceCode exposure-tracing badge firmware", version="0.1.0")

include("$(PORT_DIR)/boards/manifest.py")
require("aioble")
package("tcbadge", base_path=".")
