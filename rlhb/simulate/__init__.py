"""Simulated users and the driver that plays them against the running API.

``rlhb.simulate.users`` holds the user models (pure); ``rlhb.simulate.driver`` is the
``rlhb simulate`` command (HTTP only: the trainer sees nothing but the events)."""
