"""Names of the values a session keeps in ``st.session_state`` (widget keys among them).

The frame's keys are shared by every page. A page's own keys start with the page's name
(``explorer_``, ``attention_`` ...): the frame keeps every such value when the user moves between
pages (Streamlit would otherwise drop the state of widgets that a run does not draw).
"""

# --- the frame: what is analysed -------------------------------------------------------------
MODEL_CHOICE = "model_choice"  # configured model name (selectbox)
CUSTOM_MODEL = "custom_model"  # hub id, folder or .gguf typed by the user (overrides the choice)
CUSTOM_MODEL_INPUT = "custom_model_input"  # the text box; copied to CUSTOM_MODEL on "Load"
DEVICE = "device"
DTYPE = "dtype"
PROMPTS = "prompts"  # the configured prompts plus the ones added in this session
PROMPT_CHOICE = "prompt_choice"  # selectbox over PROMPTS
NEW_PROMPT = "new_prompt"  # text area
PENDING_PROMPT = "pending_prompt"  # a typed prompt waiting to be analysed (consumed by one run)
PENDING_TARGET = "pending_target"  # token to explain once the pending analysis is accepted
PENDING_SELECTED = "pending_selected"  # element to select once the pending analysis is accepted
ACTIVE = "active"  # the analysis on screen (analysis.Request)
ERROR = "error"  # why the last request was refused
FAILED = "failed"  # that refused request (analysis.Request): not retried until the user asks again
NOTICES = "notices"  # what a permalink asked for that could not be honoured
LINK_READ = "link_read"  # the session's first URL has been applied

# --- the frame: shared route settings ----------------------------------------------------------
TARGET = "target"  # token position to explain
THRESHOLD = "threshold"
RENORMALIZE = "renormalize"
SELECTED = "selected"  # node name or edge id shown in the Explorer's side panel

# --- the Explorer page -------------------------------------------------------------------------
COMPACT = "explorer_compact"  # show only the token columns the route reaches
CHART = "explorer_route_chart"  # the plotly chart's selection state
LENS_NORMALIZE = "explorer_lens_normalize"
TEMPERATURE = "explorer_temperature"
HEAD = "explorer_head"
NEURON = "explorer_neuron"
NEURON_COUNT = "explorer_neuron_count"

#: Prefixes of page-owned keys; the frame keeps their values across page switches.
PAGE_PREFIXES = ("explorer_", "attention_", "attribution_", "playground_", "check_", "dataset_")
#: Frame keys bound to widgets, kept the same way.
FRAME_WIDGETS = (MODEL_CHOICE, CUSTOM_MODEL_INPUT, DEVICE, DTYPE, PROMPT_CHOICE, NEW_PROMPT, TARGET, THRESHOLD, RENORMALIZE, SELECTED)
#: Widgets whose state Streamlit owns (charts' selections, buttons): a page names their keys with
#: one of these endings, and the frame leaves them alone.
UNKEPT_SUFFIXES = ("_chart", "_button", "_form")

# --- the Attribution page ----------------------------------------------------------------------
ATTR_SOURCE = "attribution_source"  # "Generate" or "Type" the continuation
ATTR_GENERATE = "attribution_generate"  # how many tokens to generate
ATTR_CONTINUATION = "attribution_continuation"  # the typed continuation
ATTR_METHOD = "attribution_method"
ATTR_FOIL = "attribution_foil"
ATTR_FUNCTION = "attribution_function"  # probability or logit
ATTR_WORDS = "attribution_words"  # aggregate sub-word tokens into words
ATTR_STEP = "attribution_step"  # the generated token whose coloured text is shown
ATTR_IG_STEPS = "attribution_ig_steps"
ATTR_BASELINE = "attribution_baseline"
ATTR_SAMPLES = "attribution_samples"
ATTR_WINDOW = "attribution_window"
ATTR_LAYER = "attribution_layer"
ATTR_HEADS = "attribution_heads"
ATTR_CACHE = "attribution_cache"  # recent sequences and results of this session
ATTR_CONFIRMED = "attribution_confirmed"  # the long request the user chose to compute
ATTR_CHART = "attribution_heatmap_chart"
