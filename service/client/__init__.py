"""Client-side helpers for programs that talk to gmem-broker."""
