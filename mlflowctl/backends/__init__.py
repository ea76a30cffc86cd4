"""Stack backends behind one small interface: local processes and docker compose."""
