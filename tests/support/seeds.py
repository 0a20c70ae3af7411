"""The seeds' documented example of a ruleset, as a user would type it (issue text
and README): a CT chest rule in the spelling accepted as an alias of the canonical form."""

SEEDS_EXAMPLE = {
    "name": "ct-chest-routing", "execution_mode": "FIRST_MATCH",
    "rules": [{"name": "route-ct-chest",
               "conditions": [{"type": "tag_equals", "tag": "(0x0008,0x0060)", "value": "CT"},
                              {"type": "tag_contains", "tag": "(0x0018,0x0015)", "value": "CHEST"}],
               "actions": [{"type": "set", "tag": "(0x0008,0x103E)", "value": "CHEST CT - PROCESSED"}],
               "storage_backends": ["primary-storage"]}]}
