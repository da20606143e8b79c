# An example authorization policy for the dispatcher's OPA recipe (Rego v1, OPA 1.x).
#
# The dispatcher posts one input document per request to /v1/data/tyk/authz/decision:
#   request: method, path, headers (name -> value), params (name -> [values]), scheme, body_size
#   session: the gateway's session, when the API has one (not used here)
#   spec:    api_id and org_id of the API
#   hook:    type and name of the hook that asked
#
# Anyone who names themselves in X-User may read orders; only admins may change them.
package tyk.authz

# Who may create, replace or delete orders.
admins := {"alice"}

# The methods that change an order.
write_methods := {"POST", "PUT", "DELETE"}

# The caller, from the X-User header; empty when the header is missing.
default user := ""

user := input.request.headers["X-User"]

# Every rule below is about the orders collection and its members.
orders_path if startswith(input.request.path, "/orders/")

default allow := false

# Reads: any named user.
allow if {
	input.request.method == "GET"
	orders_path
	user != ""
}

# Writes: admins only.
allow if {
	input.request.method in write_methods
	orders_path
	user in admins
}

# What the dispatcher acts on: on allow, a header naming the user for the upstream; on deny, the
# status and body of the reply that the gateway sends back instead.
decision := {"allow": true, "headers": {"X-Policy-User": user}} if allow

decision := {
	"allow": false,
	"status": 403,
	"body": `{"error":"forbidden by policy"}`,
} if not allow
