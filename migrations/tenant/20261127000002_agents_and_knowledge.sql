-- Agents and their knowledge: tools, playbooks, FAQs and the associations between them.
-- Names of tools, playbooks and FAQs are snake_case and unique within their table; agent names
-- need not be unique.

CREATE TABLE tools (
    id                    uuid PRIMARY KEY,
    name                  text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_]{0,99}$'),
    display_name          text NOT NULL DEFAULT '',
    category              text NOT NULL DEFAULT 'custom',
    description           text NOT NULL DEFAULT '',
    schema                jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(schema) = 'object'),
    implementation_type   text NOT NULL DEFAULT 'http' CHECK (implementation_type IN ('python', 'http')),
    implementation_config jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(implementation_config) = 'object'),
    implementation_code   text,
    tags                  text[] NOT NULL DEFAULT '{}',
    is_default            boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE playbooks (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_]{0,99}$'),
    display_name text NOT NULL DEFAULT '',
    category     text NOT NULL DEFAULT 'custom',
    description  text NOT NULL DEFAULT '',
    tags         text[] NOT NULL DEFAULT '{}',
    tool_names   text[] NOT NULL DEFAULT '{}',
    is_default   boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE faqs (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_]{0,99}$'),
    title      text NOT NULL DEFAULT '',
    summary    text NOT NULL DEFAULT '',
    content    text NOT NULL DEFAULT '',
    category   text NOT NULL DEFAULT 'custom',
    tags       text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agents (
    id                         uuid PRIMARY KEY,
    name                       text NOT NULL,
    description                text NOT NULL DEFAULT '',
    category                   text NOT NULL DEFAULT 'custom'
        CHECK (category IN ('customer_support', 'sales', 'operations', 'custom')),
    status                     text NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'active', 'paused', 'archived')),
    system_prompt              text NOT NULL DEFAULT '',
    greeting_message           text NOT NULL DEFAULT '',
    greeting_mode              text NOT NULL DEFAULT 'interruptible'
        CHECK (greeting_mode IN ('interruptible', 'locked')),
    llm_model                  text NOT NULL DEFAULT 'gpt-4o',
    voice_provider             text NOT NULL DEFAULT 'cartesia'
        CHECK (voice_provider IN ('cartesia', 'elevenlabs', 'deepgram')),
    voice_id                   text,
    auth_mode                  text NOT NULL DEFAULT 'authenticated'
        CHECK (auth_mode IN ('public', 'authenticated')),
    ringing_enabled            boolean NOT NULL DEFAULT true,
    background_audio_enabled   boolean NOT NULL DEFAULT false,
    background_audio_volume    double precision NOT NULL DEFAULT 0.8
        CHECK (background_audio_volume BETWEEN 0 AND 1),
    noise_suppression_enabled  boolean NOT NULL DEFAULT true,
    template_id                uuid,
    active_prompt_id           uuid,
    -- Widget policy of this agent (SPEC §5).
    widget_enabled             boolean NOT NULL DEFAULT true,
    widget_auth_mode           text NOT NULL DEFAULT 'both' CHECK (widget_auth_mode IN ('guest', 'user', 'both')),
    created_by                 text NOT NULL,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX agents_newest_first ON agents (created_at DESC, id DESC);

CREATE TABLE agent_tools (
    agent_id   uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    tool_name  text NOT NULL REFERENCES tools (name) ON UPDATE CASCADE ON DELETE CASCADE,
    config     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, tool_name)
);

CREATE TABLE agent_playbooks (
    agent_id    uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    playbook_id uuid NOT NULL REFERENCES playbooks (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, playbook_id)
);
CREATE INDEX agent_playbooks_playbook ON agent_playbooks (playbook_id);

CREATE TABLE agent_faqs (
    agent_id   uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    faq_id     uuid NOT NULL REFERENCES faqs (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, faq_id)
);
CREATE INDEX agent_faqs_faq ON agent_faqs (faq_id);
