-- Demo data for the `acme` account of `kataven-hub dev` (applied once, when the account is created).
INSERT INTO tools (id, name, display_name, category, description, schema, implementation_type, implementation_config, tags, is_default) VALUES
  ('0193a000-0000-7000-8000-000000000001', 'transfer_call', 'Transfer call', 'telephony',
   'Transfers the caller to a human.', '{"type":"object","properties":{"queue":{"type":"string"}},"required":["queue"]}',
   'http', '{"url":"https://telephony.internal/transfer"}', '{telephony}', true),
  ('0193a000-0000-7000-8000-000000000002', 'lookup_order', 'Look up an order', 'commerce',
   'Finds an order by its number.', '{"type":"object","properties":{"order_number":{"type":"string"}},"required":["order_number"]}',
   'http', '{"url":"https://shop.acme.test/api/orders/{order_number}"}', '{orders,support}', false);

INSERT INTO playbooks (id, name, display_name, category, description, tags, tool_names, is_default) VALUES
  ('0193a000-0000-7000-8000-000000000011', 'escalation', 'Escalate to a human', 'support',
   'When the caller asks for a person or is upset, transfer the call.', '{support}', '{transfer_call}', true),
  ('0193a000-0000-7000-8000-000000000012', 'refund_policy', 'Refunds', 'support',
   'Refunds within 30 days with a receipt; look the order up first.', '{refunds}', '{lookup_order}', false);

INSERT INTO faqs (id, name, title, summary, content, category, tags) VALUES
  ('0193a000-0000-7000-8000-000000000021', 'opening_hours', 'Opening hours', 'Mon–Fri 9–18',
   'Our stores are open Monday to Friday, 9:00 to 18:00, and Saturday 10:00 to 14:00.', 'general', '{hours}'),
  ('0193a000-0000-7000-8000-000000000022', 'shipping_times', 'Shipping times', '2–4 business days',
   'Orders ship within one business day and arrive in 2–4 business days.', 'orders', '{shipping}');

INSERT INTO agents (id, name, description, category, status, system_prompt, greeting_message, auth_mode, created_by, created_at, updated_at) VALUES
  ('0193a000-0000-7000-8000-000000000031', 'Front desk', 'Answers the main line.', 'customer_support', 'active',
   'You are the friendly front desk of Acme Corp.', 'Hi, thanks for calling Acme! How can I help?', 'public',
   'seed', now() - interval '1 minute', now() - interval '1 minute'),
  ('0193a000-0000-7000-8000-000000000032', 'Sales assistant', 'Qualifies leads.', 'sales', 'draft',
   'You help prospects choose an Acme plan.', 'Hello! Interested in Acme?', 'authenticated',
   'seed', now(), now());

INSERT INTO agent_tools (agent_id, tool_name, config) VALUES
  ('0193a000-0000-7000-8000-000000000031', 'transfer_call', '{"queue":"support"}'),
  ('0193a000-0000-7000-8000-000000000031', 'lookup_order', '{}');
INSERT INTO agent_playbooks (agent_id, playbook_id) VALUES
  ('0193a000-0000-7000-8000-000000000031', '0193a000-0000-7000-8000-000000000011'),
  ('0193a000-0000-7000-8000-000000000031', '0193a000-0000-7000-8000-000000000012');
INSERT INTO agent_faqs (agent_id, faq_id) VALUES
  ('0193a000-0000-7000-8000-000000000031', '0193a000-0000-7000-8000-000000000021'),
  ('0193a000-0000-7000-8000-000000000031', '0193a000-0000-7000-8000-000000000022'),
  ('0193a000-0000-7000-8000-000000000032', '0193a000-0000-7000-8000-000000000021');
