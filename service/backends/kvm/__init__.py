"""The ``kvm`` backend: real guest_memfds on /dev/kvm."""
