# TraceCode badge firmware package. Each module has one job; state lives in objects that
# the app creates and passes around (radio, clock, storage), never in module globals.
VERSION = "0.1.0"

# The one module-level record: what the app last did in this boot ("running",
# "interrupted", "crashed"), read by the host interface. Diagnostic only; all firmware
# state lives in the App object.
RUN = {}
