"""Work the agent does on disk for a call: staging files, flashing, test runs, builds."""
