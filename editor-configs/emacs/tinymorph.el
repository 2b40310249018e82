;;; tinymorph.el --- tinymorph language server through eglot  -*- lexical-binding: t; -*-

;; Feature annotations (hover, and inlay hints where eglot has them: 1.10 and later), steering code actions and
;; steered completions from the tinymorph language server, for `markdown-mode' and `text-mode'.
;;
;; Setup:
;;   (add-to-list 'load-path "/path/to/tinymorph/editor-configs/emacs")
;;   (require 'tinymorph)
;;   (setq tinymorph-command '("/path/to/tinymorph/.venv/bin/tinymorph" "serve"))
;;   (add-hook 'markdown-mode-hook #'eglot-ensure)   ; and/or text-mode-hook
;;
;; Keys (in buffers managed by the tinymorph server), under C-c t:
;;   a  code actions (accept suggestion, amplify / suppress features, rewrite selection, clear steering)
;;   s  steer toward a feature       x  switch a feature off     c  clear steering
;;   l  list steering                f  search features          i  status

;;; Code:

(require 'eglot)
(require 'jsonrpc)
(require 'cl-lib)

(defgroup tinymorph nil
  "See and steer the features a language model reads in your prose."
  :group 'tools)

(defcustom tinymorph-command '("tinymorph" "serve")
  "Command that starts the tinymorph language server on stdio."
  :type '(repeat string))

(defcustom tinymorph-initialization-options '(:model "default" :sae "default")
  "Settings sent at start-up (the camelCase keys of the README's configuration table)."
  :type 'plist)

(defcustom tinymorph-steer-strength 1
  "Default strength for `tinymorph-steer'."
  :type 'number)

(defclass tinymorph-server (eglot-lsp-server) ()
  :documentation "The tinymorph language server.")

(cl-defmethod eglot-initialization-options ((_server tinymorph-server))
  tinymorph-initialization-options)

(defun tinymorph--contact (&optional _interactive)
  "The server contact, or one clear error when the command is missing (eglot does not retry)."
  (let ((program (car tinymorph-command)))
    (unless (or (file-executable-p program) (executable-find program))
      (user-error "tinymorph: cannot start the server: %S is not an executable. Run `make demo' in the \
tinymorph checkout and set `tinymorph-command' to (\"<checkout>/.venv/bin/tinymorph\" \"serve\")" program))
    (cons 'tinymorph-server tinymorph-command)))

(add-to-list 'eglot-server-programs
             '(((markdown-mode :language-id "markdown") (gfm-mode :language-id "markdown")
                (text-mode :language-id "plaintext"))
               . tinymorph--contact))

(defun tinymorph--server ()
  (let ((server (eglot-current-server)))
    (unless (and server (cl-typep server 'tinymorph-server))
      (user-error "tinymorph: this buffer is not managed by the tinymorph server (M-x eglot)"))
    server))

(defun tinymorph-command (command &optional argument)
  "Run the server COMMAND (a tinymorph.* name) with ARGUMENT (a plist) and return its result."
  (when (and (eglot-managed-p) (fboundp 'eglot--signal-textDocument/didChange))
    (eglot--signal-textDocument/didChange))  ; the server must see the text as the buffer has it
  (jsonrpc-request (tinymorph--server) :workspace/executeCommand
                   `(:command ,command :arguments ,(vector (or argument (make-hash-table))))))

(defun tinymorph--describe (result)
  (let ((entries (append (plist-get result :steering) nil)))
    (if (null entries)
        "no steering"
      (mapconcat (lambda (e)
                   (format "%s %s (%s)" (plist-get e :feature)
                           (pcase (plist-get e :mode)
                             ("ablate" "off")
                             ("clamp" (format "= %s" (plist-get e :value)))
                             (_ (format "%+g" (plist-get e :strength))))
                           (plist-get e :label)))
                 entries ", "))))

(defun tinymorph-steer (feature strength)
  "Steer suggestions toward FEATURE with STRENGTH."
  (interactive (list (read-number "Feature: ") (read-number "Strength: " tinymorph-steer-strength)))
  (message "tinymorph steering: %s"
           (tinymorph--describe (tinymorph-command "tinymorph.steer.add"
                                                   `(:feature ,feature :strength ,strength :mode "add")))))

(defun tinymorph-suppress (feature)
  "Switch FEATURE off in suggestions."
  (interactive (list (read-number "Feature: ")))
  (message "tinymorph steering: %s"
           (tinymorph--describe (tinymorph-command "tinymorph.steer.add" `(:feature ,feature :mode "ablate")))))

(defun tinymorph-clear ()
  "Clear the workspace's steering."
  (interactive)
  (tinymorph-command "tinymorph.steer.clear")
  (message "tinymorph: steering cleared"))

(defun tinymorph-list ()
  "Show the workspace's steering."
  (interactive)
  (message "tinymorph steering: %s" (tinymorph--describe (tinymorph-command "tinymorph.steer.list"))))

(defun tinymorph-search (query)
  "Search features whose labels or contexts match QUERY, then steer toward the one chosen."
  (interactive (list (read-string "Search features: ")))
  (let* ((found (append (plist-get (tinymorph-command "tinymorph.features.search" `(:query ,query)) :features)
                        nil))
         (choices (mapcar (lambda (f) (cons (format "%s  %s" (plist-get f :feature) (plist-get f :label))
                                            (plist-get f :feature)))
                          found)))
    (if (null choices)
        (message "tinymorph: no feature matches %s" query)
      (tinymorph-steer (cdr (assoc (completing-read "Steer toward: " choices nil t) choices))
                       tinymorph-steer-strength))))

(defun tinymorph-status ()
  "Show the server's model, SAE, device and queue."
  (interactive)
  (let* ((status (tinymorph-command "tinymorph.status"))
         (engine (plist-get status :engine)))
    (message "tinymorph: %s · model %s · SAE %s · %s · queue %s" (plist-get status :state)
             (plist-get engine :model) (plist-get engine :sae) (plist-get engine :device)
             (plist-get status :queueDepth))))

(defvar tinymorph-command-map
  (let ((map (make-sparse-keymap)))
    (define-key map "a" #'eglot-code-actions)
    (define-key map "s" #'tinymorph-steer)
    (define-key map "x" #'tinymorph-suppress)
    (define-key map "c" #'tinymorph-clear)
    (define-key map "l" #'tinymorph-list)
    (define-key map "f" #'tinymorph-search)
    (define-key map "i" #'tinymorph-status)
    map)
  "Keys for tinymorph, under `C-c t' in managed buffers.")

(define-minor-mode tinymorph-mode
  "Keys for the tinymorph server in buffers it manages."
  :keymap (let ((map (make-sparse-keymap))) (define-key map (kbd "C-c t") tinymorph-command-map) map))

(defun tinymorph--managed ()
  (let ((server (eglot-current-server)))
    (when (and server (cl-typep server 'tinymorph-server))
      (tinymorph-mode (if (eglot-managed-p) 1 -1))
      (when (and (fboundp 'eglot-inlay-hints-mode) (eglot-managed-p))
        (eglot-inlay-hints-mode 1)))))

(add-hook 'eglot-managed-mode-hook #'tinymorph--managed)

(provide 'tinymorph)
;;; tinymorph.el ends here
