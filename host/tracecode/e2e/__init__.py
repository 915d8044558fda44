"""End to end: scenarios -> badges -> key server -> matcher -> health codes, scored against the
scenario's ground truth, with a report and a calibration sweep. See docs/e2e.md."""
