"""Who may use the service: API keys (`keys`) and what each may spend (`quota`)."""
