"""The AWS target: DynamoDB tables, Lambda handlers, packaging and deployment (needs the `aws` extra)."""
