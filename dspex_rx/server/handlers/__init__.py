"""The unary RPC handlers, one module per service area; each is ``(call, request) ->
response`` and becomes a ``VariablesService`` method through ``rpc.Unary``.
"""
