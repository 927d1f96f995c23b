"""Push mode: sfd pushes orders into a (fake) WooCommerce shop and reads shipments back."""
