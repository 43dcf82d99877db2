"""Services: what the load balancer should hold (plan, diff) and Maglev tables. Pure."""
