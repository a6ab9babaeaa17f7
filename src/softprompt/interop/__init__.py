"""Reading and writing other tools' prompt formats."""
