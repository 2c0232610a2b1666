"""Stage 1, configuration: frozen study and trial specs and execution labels; field checks only."""
