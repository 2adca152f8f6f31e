"""The records service: encrypted storage of clinical files and imaging studies."""
