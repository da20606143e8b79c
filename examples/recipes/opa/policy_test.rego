# Unit tests for policy.rego: `opa test examples/recipes/opa -v`.
package tyk.authz_test

import data.tyk.authz

# An input document shaped like the dispatcher's, for one method, path and X-User value
# (null: no X-User header at all).
req(method, path, user) := {
	"request": {
		"method": method,
		"path": path,
		"headers": headers(user),
		"params": {"page": ["1"]},
		"scheme": "http",
		"body_size": 0,
	},
	"spec": {"api_id": "orders-api", "org_id": "acme"},
	"hook": {"type": "Pre", "name": "Authorize"},
}

headers(null) := {"Accept": "application/json"}

headers(user) := {"Accept": "application/json", "X-User": user} if user != null

# Reads.

test_get_order_by_any_named_user if {
	authz.allow with input as req("GET", "/orders/42", "bob")
}

test_get_collection_with_trailing_slash if {
	authz.allow with input as req("GET", "/orders/", "bob")
}

test_get_without_user_header_denied if {
	not authz.allow with input as req("GET", "/orders/42", null)
}

test_get_with_empty_user_denied if {
	not authz.allow with input as req("GET", "/orders/42", "")
}

test_get_outside_orders_denied if {
	not authz.allow with input as req("GET", "/invoices/42", "alice")
}

test_get_orders_without_slash_denied if {
	not authz.allow with input as req("GET", "/orders", "alice")
}

test_get_lookalike_prefix_denied if {
	not authz.allow with input as req("GET", "/ordersX/42", "alice")
}

# Writes.

test_admin_may_write if {
	every method in {"POST", "PUT", "DELETE"} {
		authz.allow with input as req(method, "/orders/42", "alice")
	}
}

test_non_admin_may_not_write if {
	every method in {"POST", "PUT", "DELETE"} {
		not authz.allow with input as req(method, "/orders/42", "bob")
	}
}

test_write_without_user_denied if {
	not authz.allow with input as req("POST", "/orders/", null)
}

test_other_methods_denied_even_for_admin if {
	every method in {"PATCH", "HEAD", "OPTIONS"} {
		not authz.allow with input as req(method, "/orders/42", "alice")
	}
}

test_admin_write_outside_orders_denied if {
	not authz.allow with input as req("DELETE", "/users/7", "alice")
}

# A session in the input changes nothing: the policy reads only the request.
test_session_is_ignored if {
	inp := object.union(req("GET", "/orders/42", "bob"), {"session": {"org_id": "acme", "rate": 100}})
	authz.allow with input as inp
}

# The decision document.

test_decision_when_allowed if {
	d := authz.decision with input as req("GET", "/orders/42", "bob")
	d == {"allow": true, "headers": {"X-Policy-User": "bob"}}
}

test_decision_when_denied if {
	d := authz.decision with input as req("PUT", "/orders/42", "bob")
	d == {"allow": false, "status": 403, "body": `{"error":"forbidden by policy"}`}
}

test_decision_body_is_json if {
	d := authz.decision with input as req("GET", "/orders/42", null)
	json.unmarshal(d.body) == {"error": "forbidden by policy"}
}

test_decision_without_any_input if {
	d := authz.decision with input as {}
	d.allow == false
	d.status == 403
}
