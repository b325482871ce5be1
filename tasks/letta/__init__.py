"""The Letta server's REST API: health, versions, agents, agent files, tools, folders."""
