"""Access domain: accounts, roles, tokens, the policy layer and the audit trail."""
