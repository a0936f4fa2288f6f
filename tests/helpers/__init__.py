"""Test helpers shared by the service tests: synthetic boards and real server processes."""
