"""Router mode's front door: the pipeline a routed model's request takes, by name.

A streamed chat request to a routed model, walked from the socket to the instance and back:

1. admit: the middlewares (gateway.middleware) check the key, bound and parse the body once, charge the
   limits and take an admission slot, as for any request.
2. take: door.FrontDoor, the innermost middleware, takes the request when its path is relayed by events
   or JSON (gateway.protocol.paths) and its `model` names a route; any other request goes on to FastAPI,
   and a request to one of vLLM's other paths goes through raw.serve as bytes.
3. read: read.Routed reads what the router needs of the body (the model, `stream`, `stream_options`, `n`,
   the token limits); every other field and content part goes on as it came.
4. choose and relay: call.RelayCall asks the route (gateway.routing.adapter) for an instance by its policy,
   which relays the body and retries elsewhere until the first bytes of the answer.
5. answer: answer.relayed passes the events on as they come (on uvicorn, with the splice on, straight from the
   instance's socket to the client's: engine_adapters.splice), ends a broken stream with an SSE error event,
   and folds a whole answer from the events (fold.fold).
6. meter: the usage event at the end is read for the metrics and the limits, and dropped again when the
   client did not ask for it.
"""
