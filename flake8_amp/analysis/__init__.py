"""Analysis shared by every rule: qualified names, autocast regions, module facts, value precision."""
