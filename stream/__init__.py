"""PyAV video sources and sinks: files, live cameras and pipes."""
