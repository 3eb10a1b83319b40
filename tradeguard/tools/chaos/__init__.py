"""`tradeguard chaos`: the real system under load with faults injected at random (`run`)."""
