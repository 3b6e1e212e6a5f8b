"""One router per resource; each route does auth, parse, call, map, and nothing else."""
