-- The account's widget branding: one row.
CREATE TABLE widget_settings (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    primary_color     text NOT NULL DEFAULT '#4F46E5',
    accent_color      text NOT NULL DEFAULT '#F59E0B',
    logo_url          text,
    launcher_position text NOT NULL DEFAULT 'br' CHECK (launcher_position IN ('bl', 'br', 'tl', 'tr')),
    launcher_label    text NOT NULL DEFAULT 'Chat with us',
    privacy_notice    text NOT NULL DEFAULT '',
    updated_at        timestamptz NOT NULL DEFAULT now()
);
INSERT INTO widget_settings DEFAULT VALUES;
