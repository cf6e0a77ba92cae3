"""The report: built from the run record, rendered as JSON, Markdown and a console table."""
