"""The node kinds the tree is made of, knowing nothing of FUSE: directories (`nodes`,
`objects`), value files (`values`), data files (`data`), blocking files (`streams`),
request/answer files (`transactions`); who may use them (`access`); what /proc says about a
caller (`callers`); the root (`root`)."""
