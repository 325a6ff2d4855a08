"""The pure domain: extent maps, the VM aggregate and its rules. No I/O, no framework imports."""
