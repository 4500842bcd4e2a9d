"""AWS calls, each turning botocore's ClientError into a tuneplane error."""
