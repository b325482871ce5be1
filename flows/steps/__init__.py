"""Steps that several flows share (tasks and sub-steps), apart from the flows themselves."""
